"""Submit, watch and manage ConViT training jobs on Kubernetes, or run them locally. Import-light."""
