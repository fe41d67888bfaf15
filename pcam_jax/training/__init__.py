"""Training: the three stages as pure jitted steps and one loop shared by all of them."""
