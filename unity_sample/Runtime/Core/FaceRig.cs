// Head, neck and eye rotations: the protocol's angles (SPEC 5.2, 5.3) in Unity's frame, and onto
// bones whatever their local axes.
//
// Conventions. The protocol's head angles live in ARKit's face frame: right-handed, +X toward the
// face's own left, +Y up, +Z out of the face; R = Ry(yaw) Rx(pitch) Rz(roll); pitch > 0 chin down,
// yaw > 0 turns toward the face's own left, roll > 0 tilts toward its own right shoulder. Unity's
// character frame is left-handed: +X the character's right, +Y up, +Z forward. It is ARKit's with
// X negated, a mirror M = diag(-1, 1, 1), so the same physical rotation is M R M: the angle about X
// stays, the angles about Y and Z change sign. With Unity's Euler order (Z, then X, then Y):
//     head = Quaternion.Euler(pitch, -yaw, -roll)   (degrees)
//     eye  = Quaternion.Euler(pitch, -yaw, 0)        (gaze pitch > 0 looks down, yaw as the head)
// (docs/OUTPUTS.md derives the same mapping for the runtime's VMC output.)
//
// Bones. Only a rig whose bones are aligned with the character (VRM's normalized bones) can take
// those rotations as local rotations. Any other rig (Ready Player Me, Mixamo, custom) gets the
// rotation conjugated into the bone's own rest axes: captured once in the rest pose,
//     A = inverse(characterWorld) * boneRestWorld,     local = restLocal * inverse(A) * q * A,
// which turns the bone about the character's axes while its parents (the body) keep animating.
//
// Quat mirrors UnityEngine.Quaternion's layout and formulas (x, y, z, w; the same product and
// vector rotation) so the core needs no Unity types and the component converts field by field.
using System;

namespace Ksdiff
{
    public struct Quat
    {
        public float x, y, z, w;

        public Quat(float x, float y, float z, float w)
        {
            this.x = x;
            this.y = y;
            this.z = z;
            this.w = w;
        }

        public static readonly Quat Identity = new Quat(0, 0, 0, 1);

        // Rotation of `radians` about a unit axis.
        public static Quat AxisAngle(float ax, float ay, float az, double radians)
        {
            double s = Math.Sin(radians / 2);
            return new Quat((float)(ax * s), (float)(ay * s), (float)(az * s), (float)Math.Cos(radians / 2));
        }

        // Unity's Quaternion.Euler, in radians: about Z, then X, then Y (q = qy * qx * qz).
        public static Quat EulerZXY(double xRad, double yRad, double zRad)
        {
            return AxisAngle(0, 1, 0, yRad) * AxisAngle(1, 0, 0, xRad) * AxisAngle(0, 0, 1, zRad);
        }

        public static Quat operator *(Quat a, Quat b)
        {
            return new Quat(
                a.w * b.x + a.x * b.w + a.y * b.z - a.z * b.y,
                a.w * b.y + a.y * b.w + a.z * b.x - a.x * b.z,
                a.w * b.z + a.z * b.w + a.x * b.y - a.y * b.x,
                a.w * b.w - a.x * b.x - a.y * b.y - a.z * b.z);
        }

        // The inverse of a unit quaternion.
        public Quat Inverse() { return new Quat(-x, -y, -z, w); }

        public Quat Normalized()
        {
            double n = Math.Sqrt((double)x * x + (double)y * y + (double)z * z + (double)w * w);
            return n < 1e-12 ? Identity : new Quat((float)(x / n), (float)(y / n), (float)(z / n), (float)(w / n));
        }

        // q * v (UnityEngine.Quaternion * Vector3).
        public void Rotate(float vx, float vy, float vz, out float rx, out float ry, out float rz)
        {
            float tx = 2 * (y * vz - z * vy), ty = 2 * (z * vx - x * vz), tz = 2 * (x * vy - y * vx);
            rx = vx + w * tx + (y * tz - z * ty);
            ry = vy + w * ty + (z * tx - x * tz);
            rz = vz + w * tz + (x * ty - y * tx);
        }

        // Spherical interpolation along the shorter arc; t = 0 gives a, t = 1 gives b.
        public static Quat Slerp(Quat a, Quat b, double t)
        {
            double dot = (double)a.x * b.x + (double)a.y * b.y + (double)a.z * b.z + (double)a.w * b.w;
            if (dot < 0) { b = new Quat(-b.x, -b.y, -b.z, -b.w); dot = -dot; }
            double wa, wb;
            if (dot > 0.9995)
            {
                wa = 1 - t;
                wb = t;
            }
            else
            {
                double theta = Math.Acos(dot), s = Math.Sin(theta);
                wa = Math.Sin((1 - t) * theta) / s;
                wb = Math.Sin(t * theta) / s;
            }
            return new Quat((float)(wa * a.x + wb * b.x), (float)(wa * a.y + wb * b.y),
                            (float)(wa * a.z + wb * b.z), (float)(wa * a.w + wb * b.w)).Normalized();
        }

        public override string ToString()
        {
            return "(" + x.ToString("F4") + ", " + y.ToString("F4") + ", " + z.ToString("F4") + ", " + w.ToString("F4") + ")";
        }
    }

    public static class HeadPose
    {
        // The head rotation of a frame (SPEC 5.2, radians) in Unity's character frame. Each angle
        // is first clamped to +-maxRadians (a rig's limit; the SPEC asks clients to clamp).
        public static Quat HeadToUnity(float pitch, float yaw, float roll, double maxRadians = Math.PI / 2)
        {
            return Quat.EulerZXY(Clamp(pitch, maxRadians), -Clamp(yaw, maxRadians), -Clamp(roll, maxRadians));
        }

        // One eye's gaze (SPEC 5.3: yaw > 0 toward the face's own left, pitch > 0 looking down;
        // relative to the head) in Unity's character frame.
        public static Quat EyeToUnity(float yaw, float pitch, double maxRadians = Math.PI / 4)
        {
            return Quat.EulerZXY(Clamp(pitch, maxRadians), -Clamp(yaw, maxRadians), 0);
        }

        // Shares a head rotation between the neck and the head (the head is the neck's child):
        // the neck takes `neckShare` (0..1) of it, the head the rest, so together they make `q`.
        public static void SplitNeck(Quat q, float neckShare, out Quat neck, out Quat head)
        {
            neck = Quat.Slerp(Quat.Identity, q, Math.Max(0f, Math.Min(1f, neckShare)));
            head = (neck.Inverse() * q).Normalized();
        }

        static double Clamp(float v, double max)
        {
            return Math.Max(-max, Math.Min(max, v));
        }
    }

    // A bone driven by rotations in the character's frame, whatever the bone's local axes.
    public struct BoneBinding
    {
        public Quat RestLocal;       // the bone's local rotation in the rest pose
        public Quat RestInCharacter; // A = inverse(characterWorld) * boneWorld, in the rest pose

        // Captured once with the character in its rest pose (Transform.rotation / localRotation).
        public static BoneBinding Capture(Quat characterWorld, Quat boneWorld, Quat boneLocal)
        {
            return new BoneBinding
            {
                RestLocal = boneLocal,
                RestInCharacter = (characterWorld.Inverse() * boneWorld).Normalized(),
            };
        }

        // The local rotation that turns the bone by `q` about the character's axes, from its rest pose.
        public Quat Local(Quat q)
        {
            return (RestLocal * Delta(q)).Normalized();
        }

        // The same turn in the bone's own axes, to apply after whatever local rotation the bone has
        // now (an Animator's idle): local = animatedLocal * Delta(q). Only for bones something else
        // rewrites every frame, or the turns would pile up.
        public Quat Delta(Quat q)
        {
            return (RestInCharacter.Inverse() * q * RestInCharacter).Normalized();
        }
    }
}
