"""Stage 1: dataset generation, UDA teacher and CLDA student training, evaluation."""
