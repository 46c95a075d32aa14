"""`benchmarks/attack_profile.py`: its attribution of ops to the parts of
an attack iteration, on names as TensorFlow and XLA write them, and its
split of the iteration by differences of wall times."""

from test_torch_reference import load


def test_attack_profile_attributes_ops_to_the_iterations_parts():
  profile = load('attack_profile')
  part_of = profile.part_of
  for name, kind, want in [
      ('while/body/_1/scae/part_encoder/conv_net_2d/Relu_1',
       '_MklNativeFusedConv2D', ('CNN', 'forward')),
      ('while/body/_1/gradient_tape/scae/part_encoder/conv_net_2d/'
       'Conv2DBackpropInput_2', 'Conv2DBackpropInput', ('CNN', 'backward')),
      ('gradient_tape/scae/part_encoder/conv_net_2d/Conv2DBackpropFilter',
       'Conv2DBackpropFilter', ('filter gradients', 'backward')),
      ('while/body/_1/gradient_tape/scae/part_encoder/mul/Mul', 'Mul',
       ('part capsule heads', 'backward')),
      ('scae/set_transformer/self_attention/linear/Tensordot/MatMul',
       'MatMul', ('Set Transformer', 'forward')),
      ('while/body/_1/scae/object_capsules/capsule_likelihood/Softmax',
       'Softmax', ('capsule likelihood', 'forward')),
      ('scae/object_capsules/batch_mlp/batch_linear/MatMul', 'BatchMatMulV2',
       ('object capsules', 'forward')),
      ('scae/template_decoder/resampler/Resampler', 'Resampler',
       ('not read by the objective', 'forward')),
      ('scae/classification_probe_1/linear/Tensordot/MatMul', 'MatMul',
       ('not read by the objective', 'forward')),
      ('scae/classification_probe/ArgMax', 'ArgMax', ('probe', 'forward')),
      ('while/body/_1/while/SelectV2_1', 'SelectV2', (profile.PARTS[8],
                                                      'forward')),
  ]:
    assert part_of(name, kind) == want, name
  hlo = profile.hlo_ops('\n'.join([
      '%parallel_convolution.38 (p.19: f32[100,9,9,128]) -> f32[1] {',
      '  ROOT %convolution.38.clone = f32[100,19,19,128]{3,2,1,0} '
      'convolution(f32[100,9,9,128]{3,2,1,0} %p.19), window={size=3x3}, '
      'metadata={op_type="Conv2DBackpropInput" op_name="gradient_tape/scae/'
      'part_encoder/conv_net_2d/Conv2DBackpropInput_2" source_line=1}',
      '  %call.13 = f32[100,19,19,128]{3,2,1,0} call(f32[1] %a), '
      'to_apply=%parallel_convolution.38, metadata={op_type="Conv2D" '
      'op_name="x"}',
      '  %dot.289 = f32[24,100,256]{2,1,0} dot(f32[24,100,128]{2,1,0} %c), '
      'metadata={op_type="BatchMatMulV2" op_name="scae/object_capsules/'
      'batch_mlp/batch_linear/MatMul"}']))
  assert hlo == {
      'convolution.38.clone': (
          'gradient_tape/scae/part_encoder/conv_net_2d/Conv2DBackpropInput_2',
          'Conv2DBackpropInput'),
      'dot.289': ('scae/object_capsules/batch_mlp/batch_linear/MatMul',
                  'BatchMatMulV2')}


def test_attack_profile_splits_the_iteration_by_differences():
  profile = load('attack_profile')
  times = dict(cnn_forward=[1., 3.], cnn_input_gradient=[4., 4.],
               model_pass=[6., 6.], model_pass_gradient=[12., 12.],
               model_pass_gradient_loop=[130., 130.],
               attack_iteration=[150., 170.], cnn_fwd_bwd=[8., 8.])
  rows, over_cnn = profile.wall_rows(times, inner=10)
  got = {name: values for name, values in rows}
  # Medians (the mean of two here) and mins, per iteration.
  assert got['CNN forward'] == (2., 1.)
  assert got['CNN input-gradient pass'] == (2., 3.)
  assert got['capsule layers, forward'] == (4., 5.)
  assert got['capsule layers, backward'] == (4., 3.)
  assert got['the model pass in a tf.while_loop, over a single pass'] == (
      1., 1.)
  assert got['attack (tanh map, losses, record, step)'] == (3., 2.)
  assert got['**attack iteration**'] == (16., 15.)
  assert over_cnn == 2.
