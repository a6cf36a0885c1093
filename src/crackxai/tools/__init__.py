"""Tools around the pipeline: evaluate a folder, explain an image, compare runs, run the pipeline,
start a multi-worker training on a host.

Each tool module has `main(argv)`; TOOLS is the one place their command names are spelled.
"""

TOOLS = ("evaluate_folder", "explain_image", "compare", "pipeline", "params", "train_worker")
