"""One alignment run as stages: plan, detect, fit, write, report."""
