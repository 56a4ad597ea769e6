// The Live Link source module. It compiles the engine-independent protocol core (C++17:
// ZeroMQ SUB client, msgpack decoding, jitter buffer, Live Link feed logic) into itself, from
// Private/KsdiffCore.cpp, so the core is built by the engine's own compiler and standard library
// (Unreal on Linux uses its bundled libc++: a core library built by the system's g++ could not be
// linked). Only libzmq is a prebuilt binary; msgpack-c and cppzmq are header-only.
//
// Expected layout (see unreal_sample/README.md, "Installing into a project"):
//   Source/ThirdParty/ksdiff_core/{include,src}   a copy of unreal_sample/core/{include,src}
//                                                 (or, in the ksdiff-runtime repository, the
//                                                 plugin finds ../../core by itself)
//   Source/ThirdParty/msgpack/include/msgpack.hpp msgpack-c, C++ headers ("cpp" branch, >= 4.0)
//   Source/ThirdParty/cppzmq/include/zmq.hpp      cppzmq (>= 4.7)
//   Source/ThirdParty/libzmq/include/zmq.h        libzmq 4.x
//   Source/ThirdParty/libzmq/Win64/<name>.lib + <name>.dll   (import library + its DLL)
//   Source/ThirdParty/libzmq/Linux/libzmq.so.5               (shared library)
//   Source/ThirdParty/libzmq/Mac/libzmq.a                    (static, built with Apple clang)
using System.IO;
using UnrealBuildTool;

public class KsdiffLiveLink : ModuleRules
{
	public KsdiffLiveLink(ReadOnlyTargetRules Target) : base(Target)
	{
		PCHUsage = PCHUsageMode.UseExplicitOrSharedPCHs;
		// The core (msgpack-c, cppzmq) uses C++ exceptions internally; none crosses into engine code.
		bEnableExceptions = true;
		// KsdiffCore.cpp holds the whole core in one translation unit with its own macro guards;
		// keep it out of unity blobs so it never shares a unit with engine-style code.
		bUseUnity = false;

		PublicDependencyModuleNames.AddRange(new string[] { "Core", "CoreUObject", "LiveLinkInterface" });
		PrivateDependencyModuleNames.AddRange(new string[] { "Engine", "Slate", "SlateCore", "Projects" });

		string ThirdParty = Path.Combine(PluginDirectory, "Source", "ThirdParty");

		// The protocol core: a copy inside the plugin, or the repository's unreal_sample/core.
		string CoreDir = Path.Combine(ThirdParty, "ksdiff_core");
		if (!File.Exists(Path.Combine(CoreDir, "src", "ksdiff_core_unity.inl")))
		{
			CoreDir = Path.GetFullPath(Path.Combine(PluginDirectory, "..", "..", "core"));
		}
		Require(Path.Combine(CoreDir, "src", "ksdiff_core_unity.inl"),
			"copy unreal_sample/core/include and unreal_sample/core/src to Source/ThirdParty/ksdiff_core/");
		PublicIncludePaths.Add(Path.Combine(CoreDir, "include"));
		PrivateIncludePaths.Add(Path.Combine(CoreDir, "src"));

		string MsgpackInclude = Path.Combine(ThirdParty, "msgpack", "include");
		string CppzmqInclude = Path.Combine(ThirdParty, "cppzmq", "include");
		string ZmqDir = Path.Combine(ThirdParty, "libzmq");
		Require(Path.Combine(MsgpackInclude, "msgpack.hpp"), "msgpack-c's C++ headers (github.com/msgpack/msgpack-c, cpp branch)");
		Require(Path.Combine(CppzmqInclude, "zmq.hpp"), "cppzmq's zmq.hpp (github.com/zeromq/cppzmq)");
		Require(Path.Combine(ZmqDir, "include", "zmq.h"), "libzmq's zmq.h");
		PrivateIncludePaths.Add(MsgpackInclude);
		PrivateIncludePaths.Add(CppzmqInclude);
		PrivateIncludePaths.Add(Path.Combine(ZmqDir, "include"));
		PrivateDefinitions.Add("MSGPACK_NO_BOOST=1");  // msgpack-c without Boost

		if (Target.Platform == UnrealTargetPlatform.Win64)
		{
			// One import library and its DLL, under whatever names the libzmq build gave them
			// (libzmq-v143-mt-4_3_5.dll, libzmq-mt-4_3_5.dll, ...): the import library records
			// the DLL's name, so they are used as they are, never renamed.
			string Win64Dir = Path.Combine(ZmqDir, "Win64");
			string Lib = Single(Win64Dir, "*.lib", "libzmq's import library for Win64");
			string Dll = Single(Win64Dir, "*.dll", "libzmq's DLL for Win64");
			PublicAdditionalLibraries.Add(Lib);
			// Delay-loaded: the module loads it from the plugin's Binaries folder at startup
			// (Windows would not search there by itself); packaging copies it along.
			PublicDelayLoadDLLs.Add(Path.GetFileName(Dll));
			RuntimeDependencies.Add("$(PluginDir)/Binaries/Win64/" + Path.GetFileName(Dll), Dll);
		}
		else if (Target.Platform == UnrealTargetPlatform.Linux)
		{
			string So = Path.Combine(ZmqDir, "Linux", "libzmq.so.5");
			Require(So, "libzmq.so.5 for Linux (e.g. from Debian/Ubuntu's libzmq5 package)");
			PublicAdditionalLibraries.Add(So);
			RuntimeDependencies.Add("$(PluginDir)/Binaries/Linux/libzmq.so.5", So);
		}
		else if (Target.Platform == UnrealTargetPlatform.Mac)
		{
			string Lib = Path.Combine(ZmqDir, "Mac", "libzmq.a");
			Require(Lib, "a static libzmq.a for macOS");
			PublicAdditionalLibraries.Add(Lib);
		}
		else
		{
			throw new BuildException("KsdiffLiveLink: no libzmq setup for " + Target.Platform + " (see unreal_sample/README.md)");
		}
	}

	private static string Single(string Dir, string Pattern, string What)
	{
		string[] Found = Directory.Exists(Dir) ? Directory.GetFiles(Dir, Pattern) : new string[0];
		if (Found.Length != 1)
		{
			throw new BuildException("KsdiffLiveLink: need exactly one " + Pattern + " in " + Dir + " -- " + What +
				" (found " + Found.Length + "). See unreal_sample/README.md, \"Installing into a project\".");
		}
		return Found[0];
	}

	private static void Require(string PathToFile, string What)
	{
		if (!File.Exists(PathToFile))
		{
			throw new BuildException("KsdiffLiveLink: missing " + PathToFile + " -- " + What +
				". See unreal_sample/README.md, \"Installing into a project\".");
		}
	}
}
