namespace Ksdiff.Ci { static class Bench { static int Main() { return 0; } } }
