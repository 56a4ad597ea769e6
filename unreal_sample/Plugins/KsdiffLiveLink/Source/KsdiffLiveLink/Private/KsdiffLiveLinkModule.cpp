#include "CoreMinimal.h"
#include "Modules/ModuleManager.h"

#if PLATFORM_WINDOWS
#include "HAL/FileManager.h"
#include "HAL/PlatformProcess.h"
#include "Interfaces/IPluginManager.h"
#include "Misc/Paths.h"
#endif

DEFINE_LOG_CATEGORY_STATIC(LogKsdiffLiveLink, Log, All);

// Nothing to register: Live Link finds UKsdiffLiveLinkSourceFactory by its class. On Windows
// the module loads libzmq's DLL (delay-loaded, see the Build.cs) from the plugin's Binaries
// folder before any ZeroMQ call, since Windows does not search there by itself.
class FKsdiffLiveLinkModule : public IModuleInterface
{
public:
	virtual void StartupModule() override
	{
#if PLATFORM_WINDOWS
		const TSharedPtr<IPlugin> Plugin = IPluginManager::Get().FindPlugin(TEXT("KsdiffLiveLink"));
		if (!Plugin.IsValid())
		{
			return;
		}
		const FString Dir = FPaths::Combine(Plugin->GetBaseDir(), TEXT("Binaries"), TEXT("Win64"));
		TArray<FString> Dlls;
		IFileManager::Get().FindFiles(Dlls, *FPaths::Combine(Dir, TEXT("libzmq*.dll")), true, false);
		if (Dlls.Num() == 0)
		{
			UE_LOG(LogKsdiffLiveLink, Error, TEXT("No libzmq*.dll in %s: the ksdiff-runtime source cannot connect"), *Dir);
			return;
		}
		const FString Path = FPaths::Combine(Dir, Dlls[0]);
		ZmqDll = FPlatformProcess::GetDllHandle(*Path);
		UE_CLOG(ZmqDll == nullptr, LogKsdiffLiveLink, Error, TEXT("Cannot load %s"), *Path);
#endif
	}

	virtual void ShutdownModule() override
	{
#if PLATFORM_WINDOWS
		if (ZmqDll != nullptr)
		{
			FPlatformProcess::FreeDllHandle(ZmqDll);
			ZmqDll = nullptr;
		}
#endif
	}

private:
	void* ZmqDll = nullptr;
};

IMPLEMENT_MODULE(FKsdiffLiveLinkModule, KsdiffLiveLink)
