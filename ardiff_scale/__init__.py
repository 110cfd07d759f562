"""ardiff-scale: pretrain, fine-tune and evaluate AR-Diffusion text models at cluster scale."""

__version__ = "0.1.0"
