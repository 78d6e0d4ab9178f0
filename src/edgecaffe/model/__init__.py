"""Model representation and import: the network IR, Caffe import/export, the zoo."""
