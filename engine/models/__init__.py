"""The networks (networks: diffusers' 2D UNet, MONAI's 3D UNet, the autoencoder) and the diffusion process around
them (diffusion: noise schedules, samplers and the reverse-diffusion loop), kept apart as diffusers keeps them."""
