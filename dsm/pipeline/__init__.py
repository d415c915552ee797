"""The pipeline's own machinery: the stage table, code dependencies, rendering for
Snakemake and DVC (dvc.yaml is generated), and keeping the two tools in sync."""
