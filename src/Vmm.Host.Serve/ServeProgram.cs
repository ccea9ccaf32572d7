using System.CommandLine;

namespace Vmm.Host.Serve;

/// <summary>
/// <c>vmm-serve</c>: the <c>serve</c> command of <c>vmm</c> on its own, for a back-end process
/// that loads nothing the front-end needs. Its arguments are those of <c>vmm</c>
/// (<c>vmm-serve serve blk --socket ...</c>), so the ./vmm script hands them on unchanged.
/// </summary>
public static class ServeProgram
{
    public static Task<int> Main(string[] args) =>
        CommandLineRunner.RunAsync(new RootCommand("ManagedVmm: a vhost-user back-end for in-process virtio devices.") { ServeCommand.Create() }, args);
}
