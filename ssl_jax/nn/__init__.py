"""Network pieces shared by methods: transformer blocks, position
embeddings, ResNet stacks, heads (attention pooling, the classifier),
masks, patches, the fixed poolings and shared loss pieces."""
