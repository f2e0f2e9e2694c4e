"""What people look at: tables, plots, the HTML report and the episode viewer."""
