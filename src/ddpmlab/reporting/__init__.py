"""Reports people read: the document model, figures, report sections and the cross-experiment compare."""
