// Runs the package's NUnit-style tests under plain Mono (tests/test_unity_core.py calls it).
//
//   mono KsdiffTests.exe [--fixture NAME]... [--exclude-category NAME]... [--include-category NAME]...
//   mono KsdiffTests.exe --list
//
// Prints one line per test (PASS / FAIL / SKIP with the reason) and a summary line
//   RESULT passed=N failed=N skipped=N
// Exit code 0 when nothing failed and at least one test ran or was skipped, 1 otherwise (a
// selection that matches no test is an error: it would otherwise pass by running nothing).
using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.Linq;
using System.Reflection;
using NUnit.Framework;

namespace Ksdiff.Ci
{
    public static class TestMain
    {
        public static int Main(string[] args)
        {
            var fixtures = new List<string>();
            var include = new List<string>();
            var exclude = new List<string>();
            bool list = false;
            for (int i = 0; i < args.Length; i++)
            {
                switch (args[i])
                {
                    case "--fixture": fixtures.Add(args[++i]); break;
                    case "--include-category": include.Add(args[++i]); break;
                    case "--exclude-category": exclude.Add(args[++i]); break;
                    case "--list": list = true; break;
                    default:
                        Console.Error.WriteLine("unknown argument " + args[i]);
                        return 2;
                }
            }

            Type[] types = typeof(TestMain).Assembly.GetTypes()
                .Where(t => t.GetCustomAttributes(typeof(TestFixtureAttribute), false).Length > 0)
                .OrderBy(t => t.Name, StringComparer.Ordinal).ToArray();
            if (list)
            {
                foreach (Type t in types) Console.WriteLine(t.Name);
                return 0;
            }
            int passed = 0, failed = 0, skipped = 0;
            foreach (Type type in types)
            {
                if (fixtures.Count > 0 && !fixtures.Contains(type.Name)) continue;
                foreach (MethodInfo test in type.GetMethods().Where(m => m.GetCustomAttributes(typeof(TestAttribute), false).Length > 0)
                             .OrderBy(m => m.MetadataToken))
                {
                    var categories = new HashSet<string>(
                        type.GetCustomAttributes(typeof(CategoryAttribute), false).Concat(test.GetCustomAttributes(typeof(CategoryAttribute), false))
                            .Cast<CategoryAttribute>().Select(c => c.Name));
                    if (include.Count > 0 && !include.Any(categories.Contains)) continue;
                    if (exclude.Any(categories.Contains)) continue;
                    string name = type.Name + "." + test.Name;
                    var watch = Stopwatch.StartNew();
                    string outcome = Run(type, test);
                    double ms = watch.Elapsed.TotalMilliseconds;
                    if (outcome == null)
                    {
                        passed++;
                        Console.WriteLine("PASS " + name + " (" + ms.ToString("F0") + " ms)");
                    }
                    else if (outcome.StartsWith("SKIP ", StringComparison.Ordinal))
                    {
                        skipped++;
                        Console.WriteLine("SKIP " + name + ": " + outcome.Substring(5));
                    }
                    else
                    {
                        failed++;
                        Console.WriteLine("FAIL " + name + " (" + ms.ToString("F0") + " ms)\n" + outcome);
                    }
                }
            }
            Console.WriteLine("RESULT passed=" + passed + " failed=" + failed + " skipped=" + skipped);
            if (passed + failed + skipped == 0)
            {
                Console.WriteLine("no test matched the selection");
                return 1;
            }
            return failed == 0 ? 0 : 1;
        }

        // null: passed; "SKIP reason"; otherwise the failure.
        static string Run(Type type, MethodInfo test)
        {
            object fixture;
            try
            {
                fixture = Activator.CreateInstance(type);
            }
            catch (Exception e)
            {
                return "fixture constructor failed: " + Unwrap(e);
            }
            string outcome = Invoke(fixture, type, typeof(SetUpAttribute));
            if (outcome == null) outcome = Invoke(fixture, test);
            string teardown = Invoke(fixture, type, typeof(TearDownAttribute));
            if (outcome == null) outcome = teardown;
            if (fixture is IDisposable) ((IDisposable)fixture).Dispose();
            return outcome;
        }

        static string Invoke(object fixture, Type type, Type attribute)
        {
            foreach (MethodInfo m in type.GetMethods().Where(m => m.GetCustomAttributes(attribute, false).Length > 0))
            {
                string outcome = Invoke(fixture, m);
                if (outcome != null) return outcome;
            }
            return null;
        }

        static string Invoke(object fixture, MethodInfo m)
        {
            try
            {
                m.Invoke(fixture, null);
                return null;
            }
            catch (TargetInvocationException e)
            {
                Exception inner = e.InnerException;
                if (inner is IgnoreException) return "SKIP " + inner.Message;
                if (inner is AssertionException) return "  " + inner.Message + "\n" + Where(inner);
                return "  " + inner;
            }
        }

        static string Unwrap(Exception e)
        {
            return e is TargetInvocationException && e.InnerException != null ? e.InnerException.ToString() : e.ToString();
        }

        // The test's own frames of an assertion's stack trace (the shim's frames are noise).
        static string Where(Exception e)
        {
            string trace = e.StackTrace ?? "";
            return string.Join("\n", trace.Split('\n').Where(l => !l.Contains("NUnit.Framework.Assert")).Select(l => "  " + l.Trim()));
        }
    }
}
