"""The example's infrastructure, each piece behind a small interface, apart from the recipe."""
