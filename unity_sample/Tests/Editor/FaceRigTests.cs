// The head/eye convention conversion (SPEC 5.2/5.3 -> Unity's left-handed character frame) and
// the bone retargeting, checked two independent ways: against the mirrored ARKit rotation matrix
// built from its definition, and by where the face actually points.
using System;
using NUnit.Framework;

namespace Ksdiff.Tests
{
    [TestFixture]
    public class FaceRigTests
    {
        const double Tol = 1e-5;

        // Unity's character frame: +X right, +Y up, +Z forward.
        static void Rotate(Quat q, float x, float y, float z, out float rx, out float ry, out float rz)
        {
            q.Rotate(x, y, z, out rx, out ry, out rz);
        }

        [Test]
        public void TheFacePointsWhereTheSpecSays()
        {
            float x, y, z;
            // headYaw > 0: the face turns toward its own left = Unity's -X.
            Rotate(HeadPose.HeadToUnity(0, 0.3f, 0), 0, 0, 1, out x, out y, out z);
            Assert.AreEqual(-Math.Sin(0.3), x, Tol);
            Assert.AreEqual(Math.Cos(0.3), z, Tol);
            // headPitch > 0: chin down, the face looks down.
            Rotate(HeadPose.HeadToUnity(0.2f, 0, 0), 0, 0, 1, out x, out y, out z);
            Assert.AreEqual(-Math.Sin(0.2), y, Tol);
            // headRoll > 0: the head tilts toward its own right shoulder: the top goes to +X.
            Rotate(HeadPose.HeadToUnity(0, 0, 0.25f), 0, 1, 0, out x, out y, out z);
            Assert.AreEqual(Math.Sin(0.25), x, Tol);
            Assert.AreEqual(Math.Cos(0.25), y, Tol);
            // Gaze: yaw > 0 toward the face's own left, pitch > 0 down.
            Rotate(HeadPose.EyeToUnity(0.2f, 0.1f), 0, 0, 1, out x, out y, out z);
            Assert.Less(x, 0);
            Assert.Less(y, 0);
        }

        [Test]
        public void TheConversionIsTheMirroredArkitRotation()
        {
            var rng = new Random(5);
            for (int n = 0; n < 200; n++)
            {
                double pitch = rng.NextDouble() * 2 - 1, yaw = rng.NextDouble() * 2 - 1, roll = rng.NextDouble() * 2 - 1;
                // SPEC 5.2 by definition: R = Ry(yaw) Rx(pitch) Rz(roll), right-handed matrices.
                double[,] r = Mul(Mul(Ry(yaw), Rx(pitch)), Rz(roll));
                // The same physical rotation in Unity's frame: M R M with M = diag(-1, 1, 1).
                double[,] m = { { -1, 0, 0 }, { 0, 1, 0 }, { 0, 0, 1 } };
                double[,] expected = Mul(Mul(m, r), m);
                double[,] actual = Matrix(HeadPose.HeadToUnity((float)pitch, (float)yaw, (float)roll));
                for (int i = 0; i < 3; i++)
                    for (int j = 0; j < 3; j++)
                        Assert.AreEqual(expected[i, j], actual[i, j], 1e-5, "element " + i + "," + j);
            }
        }

        [Test]
        public void AnglesAreClampedToTheRigsLimits()
        {
            Quat big = HeadPose.HeadToUnity(0, 3f, 0, 0.5);
            Quat limit = HeadPose.HeadToUnity(0, 0.5f, 0);
            Assert.AreEqual(limit.y, big.y, 1e-6);
            Assert.AreEqual(limit.w, big.w, 1e-6);
        }

        [Test]
        public void ABoneTurnsAboutTheCharactersAxesWhateverItsOwnAxes()
        {
            var rng = new Random(11);
            for (int n = 0; n < 100; n++)
            {
                Quat character = RandomRotation(rng), parent = RandomRotation(rng), restLocal = RandomRotation(rng);
                Quat restWorld = parent * restLocal;
                BoneBinding bone = BoneBinding.Capture(character, restWorld, restLocal);
                Quat q = HeadPose.HeadToUnity((float)(rng.NextDouble() - 0.5), (float)(rng.NextDouble() - 0.5), (float)(rng.NextDouble() - 0.5));
                Quat world = parent * bone.Local(q);
                // Expected: the rest pose turned by q about the character's axes.
                Quat expected = character * q * character.Inverse() * restWorld;
                AssertSameRotation(expected, world);
            }
            // Identity in, rest pose out.
            Quat c = RandomRotation(rng), p = RandomRotation(rng), l = RandomRotation(rng);
            AssertSameRotation(l, BoneBinding.Capture(c, p * l, l).Local(Quat.Identity));
        }

        [Test]
        public void NeckAndHeadTogetherMakeTheWholeRotationAndEyesFollowTheHead()
        {
            var rng = new Random(3);
            Quat character = RandomRotation(rng), parent = RandomRotation(rng);
            Quat neckLocal = RandomRotation(rng), headLocal = RandomRotation(rng), eyeLocal = RandomRotation(rng);
            Quat neckRest = parent * neckLocal, headRest = neckRest * headLocal, eyeRest = headRest * eyeLocal;
            BoneBinding neck = BoneBinding.Capture(character, neckRest, neckLocal);
            BoneBinding head = BoneBinding.Capture(character, headRest, headLocal);
            BoneBinding eye = BoneBinding.Capture(character, eyeRest, eyeLocal);
            Quat q = HeadPose.HeadToUnity(0.3f, -0.4f, 0.2f);
            Quat qn, qh;
            HeadPose.SplitNeck(q, 0.4f, out qn, out qh);
            Quat headWorld = parent * neck.Local(qn) * head.Local(qh);
            AssertSameRotation(character * q * character.Inverse() * headRest, headWorld);
            // The eye's gaze is relative to the head.
            Quat g = HeadPose.EyeToUnity(0.2f, 0.1f);
            Quat eyeWorld = headWorld * eye.Local(g);
            AssertSameRotation(character * q * g * character.Inverse() * eyeRest, eyeWorld);
            // Share 0: all on the head; share 1: all on the neck.
            HeadPose.SplitNeck(q, 0f, out qn, out qh);
            AssertSameRotation(Quat.Identity, qn);
            HeadPose.SplitNeck(q, 1f, out qn, out qh);
            AssertSameRotation(Quat.Identity, qh);
        }

        [Test]
        public void EulerMatchesUnitysOrder()
        {
            // Quaternion.Euler(x, y, z) rotates about Z, then X, then Y: check against matrices.
            double xr = 0.3, yr = -0.7, zr = 0.2;
            double[,] expected = Mul(Mul(Ry(yr), Rx(xr)), Rz(zr));
            double[,] actual = Matrix(Quat.EulerZXY(xr, yr, zr));
            for (int i = 0; i < 3; i++)
                for (int j = 0; j < 3; j++)
                    Assert.AreEqual(expected[i, j], actual[i, j], 1e-6);
        }

        // --- helpers -------------------------------------------------------------------------

        static Quat RandomRotation(Random rng)
        {
            return new Quat((float)(rng.NextDouble() * 2 - 1), (float)(rng.NextDouble() * 2 - 1),
                            (float)(rng.NextDouble() * 2 - 1), (float)(rng.NextDouble() * 2 - 1)).Normalized();
        }

        // q and -q are the same rotation.
        static void AssertSameRotation(Quat expected, Quat actual)
        {
            double dot = Math.Abs((double)expected.x * actual.x + (double)expected.y * actual.y + (double)expected.z * actual.z + (double)expected.w * actual.w);
            Assert.AreEqual(1.0, dot, 1e-5, "expected " + expected + ", got " + actual);
        }

        // The rotation matrix of q, columns = images of the axes (built from Rotate, not from
        // a quaternion-to-matrix formula).
        static double[,] Matrix(Quat q)
        {
            var m = new double[3, 3];
            float[][] axes = { new float[] { 1, 0, 0 }, new float[] { 0, 1, 0 }, new float[] { 0, 0, 1 } };
            for (int j = 0; j < 3; j++)
            {
                float x, y, z;
                q.Rotate(axes[j][0], axes[j][1], axes[j][2], out x, out y, out z);
                m[0, j] = x;
                m[1, j] = y;
                m[2, j] = z;
            }
            return m;
        }

        static double[,] Rx(double a) { return new[,] { { 1, 0, 0 }, { 0, Math.Cos(a), -Math.Sin(a) }, { 0, Math.Sin(a), Math.Cos(a) } }; }
        static double[,] Ry(double a) { return new[,] { { Math.Cos(a), 0, Math.Sin(a) }, { 0, 1, 0 }, { -Math.Sin(a), 0, Math.Cos(a) } }; }
        static double[,] Rz(double a) { return new[,] { { Math.Cos(a), -Math.Sin(a), 0 }, { Math.Sin(a), Math.Cos(a), 0 }, { 0, 0, 1 } }; }

        static double[,] Mul(double[,] a, double[,] b)
        {
            var c = new double[3, 3];
            for (int i = 0; i < 3; i++)
                for (int j = 0; j < 3; j++)
                    for (int k = 0; k < 3; k++)
                        c[i, j] += a[i, k] * b[k, j];
            return c;
        }
    }
}
