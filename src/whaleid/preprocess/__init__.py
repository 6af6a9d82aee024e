"""Photo preparation before the model: saliency, crops, boxes, background removal and the crop cache."""
