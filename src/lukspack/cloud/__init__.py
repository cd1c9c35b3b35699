"""Delivery to IBM Cloud: object storage (COS, S3 API), IAM tokens, Key Protect key wrapping,
custom-image import (VPC and classic) and the one-command publish."""
