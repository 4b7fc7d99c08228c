"""``adamkit reproduce``: the papers' claims about Adam, measured on offline data."""
