"""The learners: implicit factors (ALS/BPR, CPU or GPU), the visual space learned from the
catalogue's categories, and the cold-start projection from images to item factors. Training,
evaluation and tuning all fit models through these."""
