"""The research studies built on the training commands: the CLDA ablation (paper Tab. 3) and its report, the UDA
baselines, the domain-gap study and the paper's analyses (Fig. 2-5). Each drives the commands through Python
calls with typed config overrides (``clda_deploy.config.override``), never through formatted ``--set`` strings."""
