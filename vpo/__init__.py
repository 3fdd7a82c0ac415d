"""VPO Studio's library: backbones, rewards and online video preference optimisation.

No Django here: the web app and the Celery worker call into this package, never the reverse.
"""
