#!/usr/bin/env bash
# lmact beside the values a paper published: Krishnamurthy et al.'s baselines (UCB with
# C = 1, Thompson sampling, greedy) on the hard and easy bandits, T = 100, 1,000 replicates
# each, as the paper's figures 11 and 12. Writes results/published.md (the table `lmact
# report` prints) and results/published-values.png (the figure). About four minutes on two
# cores: two runs at a time, into one store.
set -euo pipefail
cd "$(dirname "$0")/.."
work="$(mktemp -d)"
store="$work/published.sqlite"
trap 'rm -rf "$work"' EXIT

for level in hard easy; do
    for model in ucb thompson greedy; do
        echo "krishnamurthy-$level, $model" >&2
        lmact run --preset "krishnamurthy-$level" --model "$model" --replicates 1000 \
            --store "$store" > /dev/null &
        # Two at a time: one a core.
        if [ "$(jobs -r | wc -l)" -ge 2 ]; then wait -n; fi
    done
done
wait

lmact report --store "$store" --plot "$work/plots" > "$work/report.md"
cp "$work/plots/published-values.png" results/published-values.png
{
    echo "# Published values beside lmact's runs"
    echo
    echo "Made by \`bash scripts/make_published_results.sh\`: Krishnamurthy et al.'s baselines,"
    echo "T = 100, 1,000 replicates each (published/krishnamurthy2024.toml holds the values)."
    echo
    awk '/^### /{task=$0} /Published values beside these runs/{print task; print ""; show=1; next}
         show && /^$/ && seen {show=0; seen=0; print ""} show {if ($0 != "") seen=1; print}' \
        "$work/report.md"
} > results/published.md
echo "wrote results/published.md and results/published-values.png" >&2
