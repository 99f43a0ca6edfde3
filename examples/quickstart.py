"""The TensorFlow KMeans estimator example, ported to jaxkmeans.

The only changes from TensorFlow's version: the import, and `input_fn` returns a numpy
array instead of a tensor.
"""

import numpy as np

import jaxkmeans

num_points = 100
dimensions = 2
points = np.random.default_rng(0).uniform(0, 1000, [num_points, dimensions])


def input_fn():
    return points.astype(np.float32)


num_clusters = 5
kmeans = jaxkmeans.KMeans(num_clusters=num_clusters, use_mini_batch=False, seed=0)

# train
num_iterations = 10
previous_centers = None
for _ in range(num_iterations):
    kmeans.train(input_fn)
    cluster_centers = kmeans.cluster_centers()
    if previous_centers is not None:
        print("delta:", cluster_centers - previous_centers)
    previous_centers = cluster_centers
    print("score:", kmeans.score(input_fn))
print("cluster centers:", cluster_centers)

# map the input points to their clusters
cluster_indices = list(kmeans.predict_cluster_index(input_fn))
for i, point in enumerate(points):
    cluster_index = cluster_indices[i]
    center = cluster_centers[cluster_index]
    print("point:", point, "is in cluster", cluster_index, "centered at", center)
