"""prefect-aws blocks for S3 data: credentials come from the environment into a saved block, never code."""

from __future__ import annotations

import os

from taxiflow.core.errors import InvalidArgumentError

CREDENTIALS_BLOCK = "taxi-aws"


def save_s3_blocks(
    bucket_name: str, *, bucket_block: str, bucket_folder: str = "", endpoint_url: str | None = None, credentials_block: str = CREDENTIALS_BLOCK
) -> None:
    """Create or update the AwsCredentials and S3Bucket blocks (idempotent)."""
    from prefect_aws import AwsCredentials, S3Bucket
    from prefect_aws.client_parameters import AwsClientParameters
    from pydantic import SecretStr

    key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    if not key or not secret:
        raise InvalidArgumentError("AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY must be set in the environment to create the S3 blocks")
    credentials = AwsCredentials(
        aws_access_key_id=key,
        aws_secret_access_key=SecretStr(secret),  # stored by Prefect as a secret field
        region_name=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
        aws_client_parameters=AwsClientParameters(endpoint_url=endpoint_url),
    )
    credentials.save(credentials_block, overwrite=True)
    S3Bucket(bucket_name=bucket_name, bucket_folder=bucket_folder, credentials=credentials).save(bucket_block, overwrite=True)
