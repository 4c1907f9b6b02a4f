import logging

logging.getLogger("bitswarm").setLevel(logging.DEBUG)
