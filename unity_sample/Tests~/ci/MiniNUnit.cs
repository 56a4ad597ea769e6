// The part of NUnit's API the package's tests use, for running them with Debian's Mono where
// NUnit is not installed (and NuGet cannot be reached). Unity's Test Runner compiles the same
// test files against the real NUnit 3; this folder ends in '~', so Unity never imports it.
//
// Semantics follow NUnit where the tests rely on them: AreEqual compares numbers by value
// across types (5 == 5L == 5.0) and collections element by element.
using System;
using System.Collections;
using System.Globalization;

namespace NUnit.Framework
{
    [AttributeUsage(AttributeTargets.Class)]
    public sealed class TestFixtureAttribute : Attribute { }

    [AttributeUsage(AttributeTargets.Method)]
    public sealed class TestAttribute : Attribute { }

    [AttributeUsage(AttributeTargets.Method)]
    public sealed class SetUpAttribute : Attribute { }

    [AttributeUsage(AttributeTargets.Method)]
    public sealed class TearDownAttribute : Attribute { }

    [AttributeUsage(AttributeTargets.Class | AttributeTargets.Method, AllowMultiple = true)]
    public sealed class CategoryAttribute : Attribute
    {
        public readonly string Name;
        public CategoryAttribute(string name) { Name = name; }
    }

    public delegate void TestDelegate();

    public class AssertionException : Exception
    {
        public AssertionException(string message) : base(message) { }
    }

    public class IgnoreException : Exception
    {
        public IgnoreException(string message) : base(message) { }
    }

    public static class Assert
    {
        public static void AreEqual(object expected, object actual) { AreEqual(expected, actual, null); }

        public static void AreEqual(object expected, object actual, string message)
        {
            if (!Same(expected, actual))
                Fail(Describe(message) + "expected " + Show(expected) + " but was " + Show(actual));
        }

        public static void AreEqual(double expected, double actual, double delta) { AreEqual(expected, actual, delta, null); }

        public static void AreEqual(double expected, double actual, double delta, string message)
        {
            if (!(Math.Abs(expected - actual) <= delta))
                Fail(Describe(message) + "expected " + Show(expected) + " +/- " + Show(delta) + " but was " + Show(actual));
        }

        public static void AreNotEqual(object expected, object actual) { AreNotEqual(expected, actual, null); }

        public static void AreNotEqual(object expected, object actual, string message)
        {
            if (Same(expected, actual)) Fail(Describe(message) + "expected a value other than " + Show(expected));
        }

        public static void IsTrue(bool condition) { IsTrue(condition, null); }
        public static void IsTrue(bool condition, string message) { if (!condition) Fail(Describe(message) + "expected true"); }
        public static void IsFalse(bool condition) { IsFalse(condition, null); }
        public static void IsFalse(bool condition, string message) { if (condition) Fail(Describe(message) + "expected false"); }
        public static void IsNull(object o) { IsNull(o, null); }
        public static void IsNull(object o, string message) { if (o != null) Fail(Describe(message) + "expected null but was " + Show(o)); }
        public static void IsNotNull(object o) { IsNotNull(o, null); }
        public static void IsNotNull(object o, string message) { if (o == null) Fail(Describe(message) + "expected not null"); }

        public static void Less(double a, double b) { Less(a, b, null); }
        public static void Less(double a, double b, string message) { if (!(a < b)) Fail(Describe(message) + "expected " + Show(a) + " < " + Show(b)); }
        public static void LessOrEqual(double a, double b) { LessOrEqual(a, b, null); }
        public static void LessOrEqual(double a, double b, string message) { if (!(a <= b)) Fail(Describe(message) + "expected " + Show(a) + " <= " + Show(b)); }
        public static void Greater(double a, double b) { Greater(a, b, null); }
        public static void Greater(double a, double b, string message) { if (!(a > b)) Fail(Describe(message) + "expected " + Show(a) + " > " + Show(b)); }
        public static void GreaterOrEqual(double a, double b) { GreaterOrEqual(a, b, null); }
        public static void GreaterOrEqual(double a, double b, string message) { if (!(a >= b)) Fail(Describe(message) + "expected " + Show(a) + " >= " + Show(b)); }

        public static T Throws<T>(TestDelegate code) where T : Exception { return Throws<T>(code, null); }

        public static T Throws<T>(TestDelegate code, string message) where T : Exception
        {
            try
            {
                code();
            }
            catch (Exception e)
            {
                if (e.GetType() == typeof(T)) return (T)e;
                Fail(Describe(message) + "expected " + typeof(T).Name + " but got " + e.GetType().Name + ": " + e.Message);
            }
            Fail(Describe(message) + "expected " + typeof(T).Name + " but nothing was thrown");
            return null;
        }

        public static void Fail(string message) { throw new AssertionException(message); }
        public static void Ignore(string message) { throw new IgnoreException(message); }

        static string Describe(string message) { return string.IsNullOrEmpty(message) ? "" : message + ": "; }

        static bool Same(object a, object b)
        {
            if (a == null || b == null) return a == null && b == null;
            if (IsNumber(a) && IsNumber(b))
            {
                if (IsIntegral(a) && IsIntegral(b)) return ToDecimal(a) == ToDecimal(b);
                return Convert.ToDouble(a, CultureInfo.InvariantCulture) == Convert.ToDouble(b, CultureInfo.InvariantCulture);
            }
            if (!(a is string) && a is IEnumerable && b is IEnumerable && !(b is string))
            {
                IEnumerator x = ((IEnumerable)a).GetEnumerator(), y = ((IEnumerable)b).GetEnumerator();
                while (true)
                {
                    bool mx = x.MoveNext(), my = y.MoveNext();
                    if (mx != my) return false;
                    if (!mx) return true;
                    if (!Same(x.Current, y.Current)) return false;
                }
            }
            return a.Equals(b);
        }

        static bool IsNumber(object o)
        {
            return IsIntegral(o) || o is float || o is double || o is decimal;
        }

        static bool IsIntegral(object o)
        {
            return o is sbyte || o is byte || o is short || o is ushort || o is int || o is uint || o is long || o is ulong;
        }

        static decimal ToDecimal(object o) { return Convert.ToDecimal(o, CultureInfo.InvariantCulture); }

        static string Show(object o)
        {
            if (o == null) return "null";
            if (o is string) return "\"" + o + "\"";
            if (o is double) return ((double)o).ToString("R", CultureInfo.InvariantCulture);
            if (o is float) return ((float)o).ToString("R", CultureInfo.InvariantCulture);
            return Convert.ToString(o, CultureInfo.InvariantCulture);
        }
    }
}
