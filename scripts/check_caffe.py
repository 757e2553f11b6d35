"""Prove a pycaffe build works: import, NetSpec, forward + backward, and an LMDB `Data` layer.

Usage: python scripts/check_caffe.py CAFFE_PYTHON_DIR
Exits 0 and prints one line per check when everything works; exits 1 naming the failed check.
Each check that could hit a Caffe CHECK (which aborts the process) runs in a child process, so a broken
build is reported with its reason instead of killing the caller silently.
"""
import subprocess
import sys

CHILD = r'''
import os, sys, tempfile
os.environ.setdefault("GLOG_minloglevel", "2")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, sys.argv[1])
import numpy as np
import caffe
from caffe import layers as L, params as P
import lmdb

caffe.set_mode_cpu()
check = sys.argv[2]
if check == "import":
    print("caffe", caffe.__version__, "from", os.path.dirname(caffe.__file__))
elif check == "netspec":
    n = caffe.NetSpec()
    n.data, n.label = L.Input(shape=[dict(dim=[2, 1, 8, 8]), dict(dim=[2, 1, 8, 8])], ntop=2)
    n.conv = L.Convolution(n.data, num_output=3, kernel_size=3, pad=1, weight_filler=dict(type="msra"))
    n.relu = L.ReLU(n.conv, in_place=True)
    n.loss = L.SoftmaxWithLoss(n.conv, n.label)
    with tempfile.NamedTemporaryFile("w", suffix=".prototxt", delete=False) as f:
        f.write("force_backward: true\n" + str(n.to_proto()))
    net = caffe.Net(f.name, caffe.TRAIN)
    rng = np.random.default_rng(0)
    net.blobs["data"].data[...] = rng.standard_normal((2, 1, 8, 8))
    net.blobs["label"].data[...] = rng.integers(0, 3, (2, 1, 8, 8))
    loss = float(net.forward()["loss"])
    net.backward()
    grad = np.abs(net.params["conv"][0].diff).sum()
    assert np.isfinite(loss) and loss > 0, loss
    assert grad > 0, "zero weight gradient after backward"
    print("netspec forward/backward ok: loss %.4f, |grad| %.4f" % (loss, grad))
elif check == "lmdb":
    d = tempfile.mkdtemp()
    env = lmdb.open(d, map_size=1 << 24)
    with env.begin(write=True) as txn:
        for i in range(3):
            arr = np.full((1, 4, 5), i * 10, np.uint8)
            datum = caffe.proto.caffe_pb2.Datum(channels=1, height=4, width=5, data=arr.tobytes())
            txn.put(b"%08d" % i, datum.SerializeToString())
    env.close()
    n = caffe.NetSpec()
    n.data = L.Data(source=d, backend=P.Data.LMDB, batch_size=3)
    with tempfile.NamedTemporaryFile("w", suffix=".prototxt", delete=False) as f:
        f.write(str(n.to_proto()))
    net = caffe.Net(f.name, caffe.TEST)
    net.forward()
    got = net.blobs["data"].data[:, 0, 0, 0].tolist()
    assert got == [0.0, 10.0, 20.0], got
    print("LMDB Data layer ok:", got)
'''


def main(caffe_python: str) -> int:
    for check in ("import", "netspec", "lmdb"):
        proc = subprocess.run([sys.executable, "-c", CHILD, caffe_python, check],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
            print("check_caffe: %s check FAILED (exit %d):\n  %s" % (check, proc.returncode, "\n  ".join(tail)),
                  file=sys.stderr)
            return 1
        print("check_caffe:", proc.stdout.strip())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
