"""Explainable AI: explanation methods, their quality metrics, rendering and the report.

    base.py       Explainer: the uniform explain(images, targets) -> (N, H, W) maps, and its cost
    registry.py   method name -> Explainer class (the one place a method name is spelled)
    cam.py        Grad-CAM, Grad-CAM++, Score-CAM, Faster Score-CAM (tf-keras-vis); CAM layers
    shap.py       SHAP Partition explainer (and the blur(k,k) masker parser)
    lime.py       LIME over superpixels
    selection.py  which test images to explain
    metrics.py    faithfulness, localisation and sanity of one map (pure functions)
    scoring.py    the metrics over a selection, the random baseline, the summary
    render.py     overlays, the comparison grid, PNG files
    report.py     the HTML report (templates/report.html, Jinja2)

Domain code: plain arguments in, arrays and files out; no configuration, tracking or stages.
"""
