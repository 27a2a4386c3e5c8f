"""The inspection page: images dropped in a browser get maps, scores and decisions; see README."""
from dhrclip.cli import app_main

if __name__ == "__main__":
    app_main()
