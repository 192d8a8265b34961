"""recipes: tune a fine-tune, retrain the winner and the untuned baseline, and report."""
