namespace Vmm.VhostUser.Hosting;

/// <summary>
/// The ActorRegistry key of the top-level <see cref="Core.Machine.VmActor"/> that
/// <see cref="ManagedVmmHostingExtensions.WithManagedVmm"/> creates. A marker type: it has no
/// instances. Consumers take <c>IRequiredActor&lt;VmKey&gt;</c>; hosted services call
/// <c>GetAsync(ct)</c>, because Akka starts asynchronously.
/// </summary>
public sealed class VmKey
{
    private VmKey()
    {
    }
}
