"""An HTTP model server for trained ConViT models: `python -m convit.serve --weights URI` (see __main__.py).

runtime.py loads the model into the device's runtime, batching.py gathers concurrent requests into batches,
protocol.py speaks KServe's Open Inference Protocol v2, app.py is the HTTP application, metrics.py Prometheus.
"""
