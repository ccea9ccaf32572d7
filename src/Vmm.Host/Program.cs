using System.CommandLine;
using Vmm.Host.Demo;
using Vmm.Host.Run;
using Vmm.Host.Serve;

namespace Vmm.Host;

public static class Program
{
    public static Task<int> Main(string[] args) => CommandLineRunner.RunAsync(CreateRootCommand(), args);

    public static RootCommand CreateRootCommand()
    {
        var root = new RootCommand("ManagedVmm: a VMM device layer built around vhost-user.")
        {
            RunCommand.Create(),
            ServeCommand.Create(),
            DemoCommand.Create(),
            Check.CheckBackendCommand.Create(),
        };
        return root;
    }
}
