"""Stage 3: the segmentation service (DESIGN §9). ``python -m serving`` runs it; ``create_app`` in
``serving.app`` builds it. Nothing is imported here, so ``python -m serving.bench`` stays light."""
