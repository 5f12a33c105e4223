"""The experiment lab: the paper's experiments, small, run as a user would run the scripts
(python lab/experiment.py --help)."""
