using Akka.Actor;
using Akka.Hosting;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Vmm.VhostUser.Hosting;

namespace Vmm.VhostUser.Tests.Hosting;

/// <summary>
/// A started generic host with Akka.Hosting and <see cref="ManagedVmmHostingExtensions.WithManagedVmm"/>
/// (STACK.md 5, "Akka.Hosting in NUnit tests": build and start the host in a helper, stop it in Dispose).
/// </summary>
internal sealed class ManagedVmmHost : IAsyncDisposable
{
    private ManagedVmmHost(IHost host)
    {
        Host = host;
    }

    public IHost Host { get; }

    public IServiceProvider Services => Host.Services;

    public ActorSystem System => Services.GetRequiredService<ActorSystem>();

    public ActorRegistry Registry => Services.GetRequiredService<ActorRegistry>();

    public IManagedVmm Vmm => Services.GetRequiredService<IManagedVmm>();

    public static async Task<ManagedVmmHost> StartAsync(Action<ManagedVmmBuilder> configure, Action<IServiceCollection>? services = null)
    {
        HostApplicationBuilder builder = Microsoft.Extensions.Hosting.Host.CreateApplicationBuilder();
        builder.Logging.ClearProviders();
        builder.Services
            .AddManagedVmm()
            .AddAkka("embed-" + Guid.NewGuid().ToString("N")[..8], (akka, _) => akka
                .AddHocon("akka.stdout-loglevel = OFF\nakka.log-dead-letters = off", HoconAddMode.Prepend)
                .ConfigureLoggers(l => l.LogLevel = Akka.Event.LogLevel.WarningLevel)
                .WithManagedVmm(configure));
        services?.Invoke(builder.Services);
        IHost host = builder.Build();
        await host.StartAsync();
        return new ManagedVmmHost(host);
    }

    public async ValueTask DisposeAsync()
    {
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(20));
        await Host.StopAsync(cts.Token);
        Host.Dispose();
    }
}
