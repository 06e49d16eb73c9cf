"""agejobs: facial age estimation by multi-task Siamese deep metric learning (Jeong et al. 2018), on Ray."""

__version__ = "0.1.0"
