// conv 3x3 (NHWC) + bias + relu, the shape of a small ResNet layer.
func.func @f(%i: tensor<1x34x34x16xf32>, %w: tensor<3x3x16x32xf32>, %b: tensor<32xf32>) -> tensor<1x32x32x32xf32> {
 %cst = arith.constant 0.0 : f32
 %e = tensor.empty() : tensor<1x32x32x32xf32>
 %o = linalg.fill ins(%cst : f32) outs(%e : tensor<1x32x32x32xf32>) -> tensor<1x32x32x32xf32>
 %r = linalg.conv_2d_nhwc_hwcf {dilations = dense<1> : tensor<2xi64>, strides = dense<1> : tensor<2xi64>} ins(%i, %w : tensor<1x34x34x16xf32>, tensor<3x3x16x32xf32>) outs(%o : tensor<1x32x32x32xf32>) -> tensor<1x32x32x32xf32>
 %y = linalg.generic {indexing_maps = [affine_map<(a,b,c,d)->(a,b,c,d)>, affine_map<(a,b,c,d)->(d)>, affine_map<(a,b,c,d)->(a,b,c,d)>], iterator_types=["parallel","parallel","parallel","parallel"]} ins(%r, %b : tensor<1x32x32x32xf32>, tensor<32xf32>) outs(%e : tensor<1x32x32x32xf32>) {
 ^bb0(%x: f32, %bb: f32, %out: f32):
   %s = arith.addf %x, %bb : f32
   %z = arith.maximumf %s, %cst : f32
   linalg.yield %z : f32
 } -> tensor<1x32x32x32xf32>
 return %y : tensor<1x32x32x32xf32> }
