"""Classical baseline: dense SIFT bag of visual words or HOG, then an SVM.

Plain NumPy, scikit-learn, OpenCV and scikit-image, no orchestration. Import the
submodules (``params``, ``features``, ``model``, ``compare``) directly: this package
imports nothing itself, so validating ``params.yaml`` never loads OpenCV.
"""
