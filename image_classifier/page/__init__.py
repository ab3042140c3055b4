"""The web page: one module per tab, each building its components and wiring its events from what it is
handed (the models, the session's chosen model, the limits); `app.py` at the top parses the command line
and launches it.

demo        build_demo: the title, the tabs and the API, assembled into one Gradio Blocks
photo       the Photo tab: bars, heatmap, the model picker and card
live        the Live tab: the webcam's frames classified as they come
many        the Many photos tab: a table and a CSV for many photos at once
compare     the Compare tab: two models side by side on one photo
api         the API endpoints: /predict, /explain, /classify, /compare
answers     a classifier's answer as the page shows it (bars, heatmap picture, caption); photos first
models      what the page needs of the models (ModelSource), their picker and cards
repeats     the twin "change" Gradio sends when a photo replaces another, run once
components  the custom component subclasses (undecoded uploads and frames, a checked model choice)
server      the theme, the upload limit and the lifespan (the cache cleanup) that launch() takes
settings    the limits and defaults, with why each is what it is
serving     the page as a Ray Serve replica builds it (--serve): remote models, health routes, FastAPI
"""

from .demo import build_demo
from .server import launch_options

__all__ = ["build_demo", "launch_options"]
