// maml.py's model, loss and inner update in plain JavaScript: the figure of "Try it"
// (docs/try.md) runs them, and a reader can call them from the browser's console.
// Nothing here draws: studies/test_try.py runs this file in Node.js against maml.py.
// It computes in float64 (JavaScript's only number); maml.py computes in float32.
//
// params is maml.py's list as nested arrays, [[W1, b1], [], [W2, b2], [], [W3, b3]]: an
// empty entry per ReLU, and each W a list of rows, one per input, as stax holds it
// (W1 is 1 x 40, W2 40 x 40, W3 40 x 1).
(function () {
  "use strict";

  // One Dense layer on one point: h W + b, h the list of the layer's inputs.
  function dense(W, b, h) {
    const out = b.slice();
    for (let i = 0; i < h.length; i++) {
      for (let j = 0; j < out.length; j++) out[j] += h[i] * W[i][j];
    }
    return out;
  }

  // jax.nn.relu. Its derivative at 0 is 0: a unit passes a gradient only where h > 0.
  function relu(z) {
    return z.map((v) => (v > 0 ? v : 0));
  }

  // The network on one input x, with the hidden layers' outputs for the backward pass.
  function forward(params, x) {
    const [[W1, b1], , [W2, b2], , [W3, b3]] = params;
    const h1 = relu(dense(W1, b1, [x]));
    const h2 = relu(dense(W2, b2, h1));
    return { h1, h2, y: dense(W3, b3, h2)[0] };
  }

  // maml.py's net_apply: 1 input, two hidden layers of 40 ReLU units, 1 output; here on
  // a list of numbers (in maml.py, points of shape (K, 1)).
  function net_apply(params, xs) {
    return xs.map((x) => forward(params, x).y);
  }

  // maml.py's loss: the mean squared error of the network on the points (xs, ys).
  function loss(params, xs, ys) {
    const out = net_apply(params, xs);
    return out.reduce((sum, y, k) => sum + (y - ys[k]) ** 2, 0) / xs.length;
  }

  // An array shaped like a, of zeros (a number, a list, or a list of lists).
  function zeros(a) {
    return Array.isArray(a) ? a.map(zeros) : 0;
  }

  // What grad(loss) computes in maml.py, written out: backpropagation through the three
  // Dense layers and the two ReLUs, summed over the points; shaped like params.
  function grad_loss(params, xs, ys) {
    const W2 = params[2][0];
    const W3 = params[4][0];
    const g = zeros(params);
    const [[gW1, gb1], , [gW2, gb2], , [gW3, gb3]] = g;
    for (let k = 0; k < xs.length; k++) {
      const x = xs[k];
      const { h1, h2, y } = forward(params, x);
      const dy = (2 * (y - ys[k])) / xs.length; // d loss / d (this point's output)
      // Layer 3, y = h2 W3 + b3; back through ReLU 2: dz2 = W3 dy where h2 > 0.
      gb3[0] += dy;
      const dz2 = h2.map((h, j) => (h > 0 ? W3[j][0] * dy : 0));
      for (let j = 0; j < h2.length; j++) {
        gW3[j][0] += h2[j] * dy;
        gb2[j] += dz2[j];
      }
      // Layer 2, z2 = h1 W2 + b2; back through ReLU 1: dz1 = W2 dz2 where h1 > 0;
      // then layer 1, z1 = x W1 + b1, whose input is x itself.
      for (let i = 0; i < h1.length; i++) {
        let dh1 = 0;
        for (let j = 0; j < dz2.length; j++) {
          gW2[i][j] += h1[i] * dz2[j];
          dh1 += W2[i][j] * dz2[j];
        }
        const dz1 = h1[i] > 0 ? dh1 : 0;
        gW1[0][i] += x * dz1;
        gb1[i] += dz1;
      }
    }
    return g;
  }

  // p - alpha * g, number by number, for two arrays of one shape (tree_map's lambda).
  function descend(p, g, alpha) {
    return Array.isArray(p) ? p.map((q, i) => descend(q, g[i], alpha)) : p - alpha * g;
  }

  // maml.py's inner_update: one step of gradient descent on the support set (xs, ys).
  // New parameters in the same layout; params itself is left as it was.
  function inner_update(params, xs, ys, alpha) {
    return descend(params, grad_loss(params, xs, ys), alpha);
  }

  window.maml = { net_apply, loss, grad_loss, inner_update };
})();
