"""Tools around the pipeline: evaluate a folder, explain an image, inspect whole photos, compare
runs, run the pipeline, score explanations on a masked folder, start a multi-worker training on a
host.

Each tool module has `main(argv)`; TOOLS is the one place their command names are spelled.
"""

TOOLS = ("evaluate_folder", "explain_image", "inspect", "compare", "pipeline", "params",
         "scorecard", "train_worker")
