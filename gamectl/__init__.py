"""gamectl: the operator's command line for gamegw."""
