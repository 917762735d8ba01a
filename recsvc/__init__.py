"""recsvc: a real-time, multimodal recommendation-engine microservice."""

__version__ = "0.1.0"
