"""Fleet learning over Flower (the optional extra ``fleet``: ``pip install -e ".[fleet]"``).

Only this package imports ``flwr``; the rest of ami_ros imports and runs without it.
"""
