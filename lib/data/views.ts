/** The contrastive second view on tensors (see native/core/data/contrastive_views.h). */
import { native } from '../binding';
import { handleOf, Tensor } from '../tensor';

/**
 * images `[B, C, H, W]`, annotations `[B, M, 5]` (input pixels; label ≥ 0 boxes), factors `[B]` →
 * views: inside each box a zoom by its image's factor about the box centre (bilinear, edges clamped),
 * boxes pasted largest first; elsewhere the image unchanged. On the images' device.
 */
export async function contrastiveViews(images: Tensor, annotations: Tensor, factors: Tensor): Promise<Tensor> {
  return new Tensor(await native().contrastiveViewsAsync(handleOf('images', images), handleOf('annotations', annotations), handleOf('factors', factors)));
}
