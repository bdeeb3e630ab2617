"""Neural-network building blocks: encoders, k-means pretraining and classifier fine-tuning."""
