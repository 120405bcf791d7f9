"""Widgets shared by the console's screens: the frame around them, the banner, the chart."""
